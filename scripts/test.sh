#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# System packages: Xvfb and Mesa GL for a real (headless) napari viewer, Qt's xcb libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libfreetype6 libdbus-1-3 \
    libx11-6 libx11-xcb1 libxext6 libxrender1 libxi6 libsm6 libice6 libxkbcommon0 libxkbcommon-x11-0 \
    libxcb1 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render0 libxcb-render-util0 \
    libxcb-shm0 libxcb-sync1 libxcb-xkb1 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 >/dev/null
fi
# torch==2.13.0 is the CPU wheel; the package itself only asks for a range.
python -m pip install -q torch==2.13.0 -e ".[testing]"
xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest "$@"
