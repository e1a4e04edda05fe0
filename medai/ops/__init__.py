"""Operating a deployment: backups and restores, security events, `medai doctor`.

Sits between ``medai.serving`` (which shows security events on the dashboard and in
``/metrics``) and ``medai.training``; it reads the catalog, the store and the audit chain of a
home and never imports a web or ML framework.
"""
