"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build/html``.

Everything is offline: no intersphinx inventories, the gallery's data and the
encoder's weights come with the installed packages.
"""

from __future__ import annotations

import os
import warnings

import skknn

project = "skknn"
author = "The skknn developers"
copyright = "2026, The skknn developers"
release = version = skknn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "**.codeobj.json"]
templates_path = ["_templates"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True


def composing_mixins(cls) -> list[type]:
    """The private mixins an estimator is composed of, as scikit-learn composes
    ``KNeighborsClassifier`` (``skknn/_voter_*.py`` for ``skknn/voter.py``,
    ``skknn/_joint_*.py`` for ``skknn/joint.py``): their public methods are the
    estimator's own and are documented on its page."""
    prefix = "skknn._" + cls.__module__.rsplit(".", 1)[-1] + "_"
    return [b for b in cls.__mro__[1:] if b.__module__.startswith(prefix)]


def _other_bases() -> dict[str, str]:
    """For each public class composed of mixins, the bases whose members its
    page leaves out (autodoc's ``:inherited-members:`` takes their names)."""
    out = {}
    for name in skknn.__all__:
        cls = getattr(skknn, name)
        mixins = composing_mixins(cls) if isinstance(cls, type) else []
        if mixins:
            others = [b.__name__ for b in cls.__mro__[1:] if b not in mixins]
            out[f"skknn.{name}"] = ", ".join(others)
    return out


# Strings only: Sphinx pickles its configuration with the environment.
autosummary_context = {"other_bases": _other_bases()}
# No "inherited-members" key, not even False: Sphinx 9 lets a default of False
# override a class's own :inherited-members: option (the composed estimators
# below need theirs); absent, it means False.
autodoc_default_options = {"members": True}
autodoc_typehints = "none"  # the numpydoc sections say it, once
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# The checks of numpydoc's validator that scikit-learn enforces: every
# parameter documented (and none that does not exist), Returns sections,
# summaries, section order; not required: extended summaries, See Also on every
# method, examples on every method (classes and functions have them, tested in
# tests/test_docstrings.py).
numpydoc_validation_checks = {
    "all",
    "ES01",  # extended summary
    "SA01",  # See Also
    "EX01",  # Examples (required of public classes and functions by a test)
    "GL01",  # summary may start on the first line
    "GL02",
    "SS05",  # "Returns ..." as well as "Return ..."
    "SS06",  # two-line summaries
    "RT02",  # return value names
    "PR09",  # parameter descriptions need not end with a period
    "RT05",
    "SS03",
    "PR08",
    "RT04",
    "SS02",
    "GL08",  # properties without docstrings (sklearn's fitted attributes)
}
numpydoc_validation_exclude = {r"\.__init__$", r"\._", r"\.set_\w+_request$"}

html_theme = "pydata_sphinx_theme"
html_title = f"skknn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": True,
    "navbar_align": "left",
    "header_links_before_dropdown": 8,
}
html_static_path: list[str] = []

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "abort_on_example_error": True,
    "min_reported_time": 1,
    "show_memory": False,
    "remove_config_comments": True,
    "plot_gallery": os.environ.get("SKKNN_DOCS_GALLERY", "True"),
}

# Matplotlib draws off screen; the examples' own warnings are not the docs'.
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", category=UserWarning, module="matplotlib")


def _skip_member(app, what, name, obj, skip, options):
    # scikit-learn's generated metadata-routing setters (set_fit_request, ...)
    # are documented by scikit-learn; their docstrings cite its glossary.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
