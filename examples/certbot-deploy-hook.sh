#!/bin/sh
# /etc/letsencrypt/renewal-hooks/deploy/50-mustaple.sh
# Never put a renewed must-staple certificate live without its staple: prime exits non-zero
# (and nginx keeps the old certificate) unless a valid good staple was delivered.
set -e
mustaple prime --config /etc/mustaple/mustaple.toml "$RENEWED_LINEAGE/fullchain.pem"
systemctl reload nginx
