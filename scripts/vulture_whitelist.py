"""Names vulture cannot see used (scripts/test runs it over the package with this file).

Each is used, only not by a Python call vulture can follow.
"""

# ruff: noqa: B018, F821
# reached through the CLI's dispatch table ("stopped:start_stopped")
start_stopped
# fields of the sidecar and of a Task: data for readers of the JSON and plugin authors
service_file
pullback_version
# tests reset the registered secrets between cases (tests/conftest.py)
forget_all
# read by the Jinja2 templates (status page, summary mail)
verify_result
_.trend
# paramiko calls it: the policy for a host key known_hosts does not list
_.missing_host_key
# urllib and http.client call them: the ping's connections the watchdog watches
# (common/notify.py _opener)
_._create_connection
_.http_open
_.https_open
_.max_redirections
