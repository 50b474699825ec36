# Sourced by run_gpu.sh and run_e2e.sh: the wheels the GPU machine lacks (carried in .whl*/) go to /tmp/site
# once per machine (a marker keeps two benchmark lanes started together from installing over each other).
if compgen -G ".whl*/*.whl" >/dev/null; then
  if [ ! -f /tmp/site/.carried ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl*/*.whl || exit 1
    touch /tmp/site/.carried
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
