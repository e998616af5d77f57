#!/usr/bin/env bash
# Runs halong's whole test suite on a fresh machine: installs the real peer clients the
# tests talk to, then runs every Rust test (unit, integration, interop, conformance).
# Needs no standard input; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# python-hl7: a second, independent MLLP client for the interop tests.
if ! python3 -c 'import hl7.client' 2>/dev/null; then
    log "installing python-hl7 (PyPI: hl7)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore hl7
fi

# RabbitMQ at 127.0.0.1:5672 (guest/guest) for the tests/amqp_* tests.
if ! command -v rabbitmqctl >/dev/null 2>&1; then
    log "installing RabbitMQ"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null
fi
if ! rabbitmqctl status >/dev/null 2>&1; then
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
fi
for _ in $(seq 120); do
    rabbitmqctl status >/dev/null 2>&1 && break
    sleep 1
done
# A node whose application was stopped (rabbitmqctl stop_app) is started again.
rabbitmqctl start_app >/dev/null 2>&1 || true
rabbitmqctl await_startup --timeout 120 >/dev/null
# dcmtk (echoscu, storescu) and pynetdicom/pydicom: real DICOM clients for the DICOM
# interop tests.
# openssl makes the certificate of the DICOM-over-TLS test.
if [ ! -x /usr/bin/storescu ] || [ ! -x /usr/bin/echoscu ] || ! command -v openssl >/dev/null 2>&1; then
    log "installing dcmtk and openssl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dcmtk openssl >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q dcmtk openssl >/dev/null
    }
fi
if ! python3 -c 'import pynetdicom, pydicom' 2>/dev/null; then
    log "installing pynetdicom and pydicom (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pynetdicom pydicom
fi

log "building and running the tests"
cargo test --locked --all-targets -- --test-threads=2 "$@"
log "all tests passed"
