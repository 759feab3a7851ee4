#!/usr/bin/env bash
# Installs the external services the DICOM tests and benchmark use, from Debian:
# DCMTK (echoscu, storescu, findscu, ...) and Orthanc with its DICOMweb plugin;
# and Chromium, the browser the web pages' end-to-end tests drive (Playwright).
# Idempotent and quiet: does nothing when the binaries are already there, and
# never fails the caller when it cannot install (no root, no apt, offline):
# the tests then skip with a clear reason.
set -u

need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
if ! command -v Orthanc >/dev/null 2>&1; then
    need+=(orthanc orthanc-dicomweb)
elif [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    need+=(orthanc-dicomweb)
fi
[ -x /usr/bin/chromium ] || need+=(chromium fonts-liberation)  # fonts: legible pages
[ "${#need[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_services: apt-get not found; missing: ${need[*]} (DICOM and web tests will skip)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_test_services: not root; missing: ${need[*]} (DICOM and web tests will skip)" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
        >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_test_services: could not install ${need[*]} (DICOM and web tests will skip)" >&2
fi
rm -f "$log"
# The Debian package starts a system Orthanc on ports 4242/8042 where an init
# system runs; the tests start their own on free ports and do not need it.
exit 0
