#!/bin/sh
# setup.sh - install every Debian package Sorter needs to build, test and run its demo,
# idempotently and without starting any system service.
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: must run as root (it installs packages with apt-get)" >&2
    exit 1
fi
# Package maintainer scripts must not start system daemons (postfix, dovecot, dnsmasq,
# slapd, haproxy).
if ! grep -qx 'exit 101' /usr/sbin/policy-rc.d 2>/dev/null; then
    printf '#!/bin/sh\n# never start services from package scripts\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi
if command -v debconf-set-selections >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string sorter.invalid" | debconf-set-selections
    # The tests run their own slapd from a private slapd.conf: no system directory.
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
fi
PKGS="build-essential autoconf automake libtool pkg-config clang
libevent-dev libssl-dev libc-ares-dev libidn2-dev libdb5.3-dev libmilter-dev check libcrypt-dev
postfix swaks dovecot-core dovecot-lmtpd dnsmasq-base opendkim opendkim-tools python3 db-util
python3-milter python3-dkim
procps time openssl util-linux iproute2 msmtp libsasl2-modules libnet-ssleay-perl
libldap-dev slapd ldap-utils haproxy"
# operations: promtool (metrics), mandoc (manual lint), systemd-analyze (unit check)
PKGS="$PKGS prometheus mandoc systemd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    echo "setup.sh: installing:$missing"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# A package script may have started a daemon despite policy-rc.d: stop it by its PID file.
for pidf in /var/spool/postfix/pid/master.pid /run/dovecot/master.pid /run/opendkim/opendkim.pid \
            /run/slapd/slapd.pid /run/haproxy.pid; do
    if [ -s "$pidf" ]; then
        pid=$(tr -d ' \n' < "$pidf")
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null || true
    fi
done
getent passwd sorter >/dev/null 2>&1 || useradd --system --home-dir /var/spool/sorter --shell /usr/sbin/nologin sorter
echo "setup.sh: packages ready"
