#!/bin/sh
# /etc/letsencrypt/renewal-hooks/deploy/50-mustaple.sh
# Never put a renewed must-staple certificate live without its staple: prime exits non-zero
# (and nginx keeps the old certificate) unless a valid good staple was delivered. certbot
# runs it for every certificate: one the configuration does not cover (init leaves out those
# without an OCSP URL) is skipped, and reloaded as usual.
set -e
mustaple prime --skip-uncovered --config /etc/mustaple/mustaple.toml "$RENEWED_LINEAGE/fullchain.pem"
systemctl reload nginx
