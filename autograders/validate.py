"""JupyterLab's Validate button, judged as `make check` and grading judge.

nbgrader's lab extension sends Validate to its server extension, which builds a `Validator` from the
nbgrader_config.py files the *Lab server* finds (its working folder and the Jupyter config path) and
runs nbgrader's defaults there: 30 s per cell, and a test cell with any stderr output counted as
failed. Grading and `make check` ignore stderr (torch's and sklearn's warnings, ``logging.warning``,
tqdm bars) and allow the course's cell limit, so a correct answer that logs a warning failed Validate
alone. nbgrader's Validator cannot be told to ignore stderr by configuration (its preprocessors are
fixed), so this server extension serves Validate instead of nbgrader's:

- the same request, the same folder check and the same answer shape, so nbgrader's button works as is;
- the configuration nbgrader's handler would load, then the course's (`settings.configure`) on top:
  the course's cell and kernel-start limits, and `IgnorePattern` on stderr as grading has it;
- `CourseValidator`: nbgrader's Validator with `IgnorePattern` run after the notebook, before scoring.

The course's configuration travels with the extension, not with a folder, so Validate agrees wherever
the Lab was started (the repository, Binder's root, a hub's home). Fast mode is on as in grading:
nbgrader's Validator sets ``NBGRADER_EXECUTION``, which ``course.env`` reads.

Installed by `make lab` and Binder's postBuild: ``python -m autograders.validate --sys-prefix``
enables this extension and disables nbgrader's validate_assignment one (both serve the same URL).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from jupyter_server.utils import url_path_join
from nbgrader.nbgraderformat import SchemaTooNewError, SchemaTooOldError
from nbgrader.preprocessors import CheckCellMetadata, ClearOutput, Execute, IgnorePattern
from nbgrader.server_extensions.validate_assignment import handlers as nbgrader_validate
from nbgrader.validator import Validator
from tornado import web
from traitlets import List
from traitlets.config import Config

from autograders import settings

EXTENSION = "autograders.validate"
NBGRADER_EXTENSION = "nbgrader.server_extensions.validate_assignment"


class CourseValidator(Validator):
    """nbgrader's Validator, with stderr removed before scoring as grading removes it.

    nbgrader's own list (check metadata, clear outputs, execute), then `IgnorePattern`, configured by
    `settings.configure` (pattern `settings.IGNORE_STDERR_PATTERN`); without that configuration
    IgnorePattern's empty pattern removes nothing and this is nbgrader's Validator.
    """

    preprocessors = List([CheckCellMetadata, ClearOutput, Execute, IgnorePattern])


def course_config() -> Config:
    """The course's nbgrader configuration (`settings.configure`), as the Lab server's Validate uses it."""
    c = Config()
    settings.configure(c, root=settings.REPO / "grading", release_directory=settings.MODULES)
    return c


def load_config(handler=None) -> Config:
    """The configuration Validate runs with: what nbgrader's handler loads, then the course's on top.

    nbgrader's part reads nbgrader_config.py from the Lab server's working folder and the Jupyter
    config path, as nbgrader's own Validate does; the course's settings win where both set a value.
    """
    config = nbgrader_validate.ValidateAssignmentHandler.load_config(handler)
    config.merge(course_config())
    return config


class CourseValidateHandler(nbgrader_validate.ValidateAssignmentHandler):
    """nbgrader's ``POST /assignments/validate``, with the course's configuration and `CourseValidator`."""

    def load_config(self) -> Config:
        return load_config(self)

    def validate_notebook(self, path: str) -> dict:
        """Validate the notebook at `path` (relative to the Lab's root folder): nbgrader's answer shape,
        ``{"success": True, "value": {"failed": [...]} }`` or ``{"success": False, "value": message}``."""
        root = Path(self.root_dir).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise web.HTTPError(403, "Access denied: path outside allowed directory")
        try:
            result = CourseValidator(config=self.load_config()).validate(str(target))
        except SchemaTooOldError:
            self.log.error(traceback.format_exc())
            message = (f"The notebook '{target}' uses an old version of the nbgrader metadata format. "
                       f"Please **back up this notebook** and then update the metadata using:\n\n"
                       f"nbgrader update {target}\n")
            return {"success": False, "value": message}
        except SchemaTooNewError:
            self.log.error(traceback.format_exc())
            message = (f"The notebook '{target}' uses a newer version of the nbgrader metadata format. "
                       "Please update your version of nbgrader to the latest version to be able to use "
                       "this notebook.")
            return {"success": False, "value": message}
        except Exception:  # noqa: BLE001 - as nbgrader's handler: the learner sees the traceback
            self.log.error(traceback.format_exc())
            return {"success": False, "value": traceback.format_exc()}
        return {"success": True, "value": result}


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": EXTENSION}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Serve Validate (and nbgrader's version check, which the lab extension calls first)."""
    serverapp.log.info("Serving Validate with the course's nbgrader configuration (%s)", EXTENSION)
    webapp = serverapp.web_app
    webapp.settings["root_dir"] = serverapp.root_dir
    base_url = webapp.settings["base_url"]
    webapp.add_handlers(".*$", [
        (url_path_join(base_url, "/assignments/validate"), CourseValidateHandler),
        (url_path_join(base_url, "/nbgrader_version"), nbgrader_validate.NbGraderVersionHandler),
    ])


def install(user: bool = False) -> None:
    """Enable this extension and disable nbgrader's Validate server extension (both serve one URL).

    In the environment's Jupyter config (``sys.prefix/etc/jupyter``), or with `user` in the user's
    (``JUPYTER_CONFIG_DIR``, by default ~/.jupyter); the same as ``jupyter server extension enable``.
    """
    from jupyter_server.extension.serverextension import toggle_server_extension_python

    toggle_server_extension_python(EXTENSION, True, user=user, sys_prefix=not user)
    toggle_server_extension_python(NBGRADER_EXTENSION, False, user=user, sys_prefix=not user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve JupyterLab's Validate with the course's nbgrader "
                                                 "configuration (make lab and Binder's postBuild run this).")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"in this environment's Jupyter config, {sys.prefix}/etc/jupyter (the default)")
    where.add_argument("--user", action="store_true",
                       help="in the user's Jupyter config (JUPYTER_CONFIG_DIR)")
    args = parser.parse_args(argv)
    install(user=args.user)
    where = os.environ.get("JUPYTER_CONFIG_DIR", "~/.jupyter") if args.user else f"{sys.prefix}/etc/jupyter"
    print(f"Validate in JupyterLab now runs with the course's nbgrader configuration ({where}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
