# Two commands on a fresh Debian/Ubuntu machine, as root:
#   make lab    set everything up and start JupyterLab on notebooks/ (the main job)
#   make test   set everything up and run the tests (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.labkit-installed
CLASS   = $(VENV)/class

.PHONY: lab test setup system-packages notebooks release-labs benchmarks clean-host

lab: setup
	$(BIN)/labkit lab

test: setup
	$(BIN)/python -m pytest -p no:cacheprovider tests notebooks instructor --nbval --nbval-kernel-name labkit --nbval-sanitize-with notebooks/sanitize.cfg

setup: system-packages $(STAMP) $(CLASS)/.labkit-installed

# A fresh machine may have no package lists yet: fetch them once, then what we need.
# podman and runc are the oracle of tests/test_docker_oracle.py (labkit's builds and images
# against podman's, offline). node and npm run JupyterHub's configurable-http-proxy, and
# python3-venv makes the students' environment (tests/test_class_hub.py). chromium is for the browser test (tests/test_browser.py); where the distribution cannot
# install it (Ubuntu ships it as a snap, which does not run here) that test skips and says so.
# slirp4netns and passt (pasta) give rootless containers published ports and outbound
# traffic, as for rootless podman; nft masquerades a rootless bridge's subnet behind pasta
# inside the user's own network namespace (labkit/net/rootless_bridge.py).
system-packages:
	@ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -qq
	@[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && command -v losetup >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static iproute2 util-linux
	@# rootless labkit (tests/test_rootless.py): newuidmap/newgidmap map an ordinary user's
	@# /etc/subuid range; fuse-overlayfs stands in for a kernel's overlay before 5.11.
	@command -v newuidmap >/dev/null && command -v fuse-overlayfs >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uidmap fuse-overlayfs >/dev/null || \
	  echo "make: uidmap and fuse-overlayfs could not be installed from apt; tests/test_rootless.py will skip"
	@command -v podman >/dev/null && command -v runc >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null || \
	  echo "make: podman and runc could not be installed from apt; tests/test_docker_oracle.py will skip"
	@# mmdebstrap builds the Debian image of tests/test_binder_like.py (the lab as Binder runs it)
	@# from Debian's mirror: no container registry is needed.
	@command -v mmdebstrap >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null || \
	  echo "make: mmdebstrap could not be installed from apt; tests/test_binder_like.py will skip its container"
	@command -v slirp4netns >/dev/null && command -v pasta >/dev/null && command -v nft >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slirp4netns passt nftables >/dev/null || \
	  echo "make: slirp4netns, passt or nftables could not be installed from apt; tests/test_rootless_network.py and the rootless bridge's outbound tests will skip"
	@[ -x /usr/bin/chromium ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	  echo "make: chromium could not be installed from apt; tests/test_browser.py will skip"
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null || \
	  echo "make: node and npm could not be installed from apt; tests/test_class_hub.py will skip"
	@/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null

# Editable as a plain path entry (compat), not setuptools' default import hook: the hook's
# .pth imports pathlib and more in every Python process of the venv, ~15 ms CPU before the
# first line of each `labkit` command. setuptools calls compat transitional: where it is
# gone, the default mode. The Makefile is a prerequisite: the mode lives here.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lab]' --config-settings editable_mode=compat || \
	  $(BIN)/pip install -q -e '.[test,lab]'
	$(BIN)/labkit kernel install --sys-prefix
	# JupyterHub's proxy (tests/test_class_hub.py); 5.x needs node 20, Debian 12 has 18. --prefix alone
	# would also move npm's global config to $(VENV)/node/etc/npmrc and drop the machine's own
	# (a CA file, a registry mirror): keep the one npm reads without --prefix.
	-command -v npm >/dev/null && npm install -q --prefix $(VENV)/node --globalconfig "$$(npm config get globalconfig)" \
	  --no-audit --no-fund configurable-http-proxy@4
	$(BIN)/python -m compileall -q labkit  # bytecode once, here: not by the first labkit command
	touch $(STAMP)

# The students' environment of tests/test_class_hub.py (a class on one JupyterHub), as TLJH's
# /opt/tljh/user: the system's Python, which every user may run (the venv above may use a
# Python under /root); labkit editable, so the students run this checkout's code. nbval: the
# notebooks run rootless in it, as an ordinary user (docs/class.md, "The notebooks rootless").
$(CLASS)/.labkit-installed: pyproject.toml Makefile
	/usr/bin/python3 -m venv $(CLASS)
	$(CLASS)/bin/pip install -q -e . jupyterhub jupyter_server nbval --config-settings editable_mode=compat || \
	  $(CLASS)/bin/pip install -q -e . jupyterhub jupyter_server nbval
	$(CLASS)/bin/labkit kernel install --sys-prefix
	touch $@

notebooks: setup
	$(BIN)/labkit notebooks run

# The labs' student copies: instructor/labs/ holds each lab's source (solutions, executed
# outputs, what nbval checks); notebooks/labs/ holds what `labkit grade release` makes of it
# (solutions stubbed, hidden checks removed, outputs cleared), which is what `make lab` and
# Binder open for a student. Edit the source, run this, commit both:
# tests/test_released_labs.py fails when a released copy differs from what this writes.
release-labs: setup
	$(BIN)/labkit grade release instructor/labs/*.ipynb --out notebooks/labs

# Issue 13's table in one run (~5 minutes; apt-installs crun if missing); raw samples and
# an environment record go to results/benchmarks/. `python benchmarks/table.py --quick` checks it runs.
benchmarks: setup
	$(BIN)/python benchmarks/table.py

clean-host: setup
	$(BIN)/labkit gc
