# The instructor's nbgrader settings, on top of /etc/jupyter/nbgrader_config.py (the course id and the ngshare
# exchange): read only on servers started with JUPYTER_CONFIG_PATH=/opt/sysml/instructor/etc/jupyter
# (values.yaml's pre-spawn hook does that for members of sysml-instructors). Course infrastructure.
#
# The course folder is ~/sysml on the instructor's own home volume, which no learner's pod mounts; its
# source is the solutions/ of the course repository the instructor clones into ~/systems-for-ml (or
# $SYSML_REPO), graded with the course's own settings (autograders.settings.configure, as `make grade` and
# `make hub` grade: stderr ignored, the course's cell limits, test helpers guarded). Without a clone,
# ~/sysml/source is the source. The grading kernel is the plain python3 one (no walls: INSTRUCTORS.md).
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)
course = Path.home() / "sysml"
repo = Path(os.environ.get("SYSML_REPO", Path.home() / "systems-for-ml"))
if (repo / "autograders" / "settings.py").is_file():
    sys.path.insert(0, str(repo))   # the clone's autograders, matching its solutions
from autograders.settings import COURSE_ID, configure  # noqa: E402

configure(c, root=course, release_directory="release",
          source_directory=repo / "solutions" if (repo / "solutions").is_dir() else course / "source")
c.CourseDirectory.course_id = COURSE_ID
