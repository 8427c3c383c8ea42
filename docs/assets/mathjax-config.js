// MathJax 3 (es5/tex-svg.js from the PyPI package django-static-mathjax, copied into the site by tools/book.py):
// typeset only what pymdownx.arithmatex marked, as SVG, so no font is fetched (browsers refuse web fonts from file://).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  },
  svg: {fontCache: "global"}
};
