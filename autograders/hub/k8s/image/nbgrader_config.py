# nbgrader's settings for every server of the course image (/etc/jupyter/nbgrader_config.py): the course id,
# and the exchange is ngshare (ngshare_exchange.configureExchange), reached at $NGSHARE_URL
# (singleuser.extraEnv in values.yaml). Course infrastructure: autograders/hub/k8s/.
import os

from ngshare_exchange import configureExchange

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)
configureExchange(c, os.environ.get("NGSHARE_URL", "http://ngshare:8080/services/ngshare"))
c.CourseDirectory.course_id = "sysml"  # autograders.settings.COURSE_ID
