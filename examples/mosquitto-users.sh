#!/bin/sh
# Add users to the Mosquitto password file of examples/mosquitto-secure.conf, each with a
# new random password that is also written to SECRETS_DIR/<user> (mode 600), ready for
# `harstream serve --password-file SECRETS_DIR/harstream` or for the device.
#   usage: examples/mosquitto-users.sh PASSWD_FILE SECRETS_DIR USER...
#   e.g.:  examples/mosquitto-users.sh /etc/mosquitto/harstream.passwd secrets harstream watch-1
# A user that exists gets a new password. Device users are named by their device id (the
# ACL's %u). Passwords reach mosquitto_passwd on stdin, never on a command line, where any
# local user could read them (ps). Then reload the broker: kill -HUP <mosquitto pid>.
set -eu
if [ $# -lt 3 ]; then
    sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
passwd_file=$1
secrets=$2
shift 2
umask 077
mkdir -p "$secrets"
[ -e "$passwd_file" ] || : >"$passwd_file"
for user in "$@"; do
    password=$(head -c 18 /dev/urandom | base64) # 24 characters, 144 random bits
    printf '%s\n' "$password" >"$secrets/$user"
    printf '%s\n%s\n' "$password" "$password" | mosquitto_passwd "$passwd_file" "$user" >/dev/null
done
# Mosquitto started as root reads the file only after switching to its own user
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto: "$passwd_file"
fi
