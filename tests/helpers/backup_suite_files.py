"""backup-suite 0.2's shipped example files (configs/ in lduesing/backup-suite), comments
shortened: the importer's tests read the real thing."""

SHIPPED_SERVER = """\
global:
  local_temp_base_dir: "/var/tmp/backup_server_work"
  admin_email: "server-admin+backup@example.org"
restic:
  repository_root: "/media/backup/restic"
  password_file: "/etc/backup/restic.pass"
  backup_options: "--compression max --exclude-if-present .backup_ignore"
  maintenance:
    forget_policy: "--keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 3"
    prune: true
    check: true
hosts:
  - hostname: "client-a.example.org"
    ssh_user: "backup-ld"
    ssh_key_file: "/etc/backup/client_a_id_ed25519"
    remote_tar_dir: "/var/tmp/backups"
  - hostname: "client-b.example.org"
    ssh_user: "backup-ld"
    ssh_key_file: "/etc/backup/client_b_id_ed25519"
    remote_tar_dir: "/var/tmp/backups"
    admin_email: "admin_b+backup@example.org"
"""

SHIPPED_CLIENT = """\
base_backup_dir: "/var/tmp/backups"
backup_user: "backup-ld"
backup_group: "backup-ld" # Often same as user
admin_email: "client-admin+backup@example.org"
keep_days: 14
"""

SHIPPED_COMMON = """\
YQ_CMD="${YQ_CMD:-yq}"                 # Path to yq (v4+) binary
TAR_CMD="${TAR_CMD:-tar}"               # Path to tar binary
RSYNC_CMD="${RSYNC_CMD:-rsync}"         # Path to rsync binary
DOCKER_CMD="${DOCKER_CMD:-docker compose}" # Path to docker compose command
RESTIC_CMD="${RESTIC_CMD:-restic}"       # Path to restic binary (used by server)
MSMTP_CMD="${MSMTP_CMD:-msmtp}"         # Path to msmtp binary
PG_DUMP_CMD="${PG_DUMP_CMD:-pg_dump}"
MYSQL_DUMP_CMD="${MYSQL_DUMP_CMD:-mysqldump}"
SSH_CMD="${SSH_CMD:-ssh}"               # Used by server
SCP_CMD="${SCP_CMD:-scp}"               # Used by server
DEFAULT_ADMIN_EMAIL="admin+backup@example.org"
DEFAULT_PLUGIN_DIR="/opt/backup/lib/plugins"
DEFAULT_MIN_FREE_SPACE_MB=500
DEFAULT_KEEP_DAYS=7
"""
