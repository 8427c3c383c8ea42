"""Kept for old instructions: `python tools/render_figures.py NOTEBOOK...` is now
`python tools/run_notebooks.py NOTEBOOK...` (a teaching chapter keeps all its stable outputs, any other notebook its
figure cells' PNGs)."""
from run_notebooks import main

if __name__ == "__main__":
    main()
