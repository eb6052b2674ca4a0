# Sourced by run.sh, serve.sh and test.sh (from the repository root).
# setup_venv [EXTRAS]: create .venv on first use and install the project into it, with EXTRAS.
setup_venv() {
    local py=${PYTHON:-python3}
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${1:+[$1]}"
}
