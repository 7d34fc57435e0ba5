# The instructor's nbgrader settings, on top of /etc/jupyter/nbgrader_config.py: read only on servers
# started with JUPYTER_CONFIG_PATH=/opt/sysml/instructor/etc/jupyter (values.yaml's pre-spawn hook does
# that for members of sysml-instructors).
# The course folder (source/, release/, submitted/, autograded/, feedback/, gradebook.db) lives in the
# instructor's own home volume, which no learner's pod mounts.
import os

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)
c.CourseDirectory.root = os.path.expanduser("~/sysml")
