"""The runtime in the browser: `edgert web build` writes a static site (a demo page, its Web
Worker, the pure-Python edgert wheel and the chosen .edge models) that runs edgert under
Pyodide with the NumPy kernel twins. build.py writes the site; glue.py is the Python side of
the worker, run inside Pyodide; static/ holds the page. See docs/BROWSER.md."""
