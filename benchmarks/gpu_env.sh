# Sourced by run_gpu.sh and run_e2e.sh: the wheels the GPU machine lacks (carried in .whl*/) go to /tmp/site
# once per folder and machine (a marker keeps two benchmark lanes started together from installing over each
# other, and lets a later call carry one more folder while the machine keeps the earlier ones).
# Native libraries too large for one transfer travel xz-packed beside the wheels, named by their path under
# site-packages with '/' written as '+', their wheel stripped of them (BENCHMARKS.md, "Wheels"); they are
# unpacked after the install.
for dir in .whl*/; do
  compgen -G "$dir*.whl" >/dev/null || continue
  marker="/tmp/site/.carried-$(basename "$dir")"
  if [ ! -f "$marker" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$dir"*.whl || exit 1
    touch "$marker"
  fi
done
for packed in .whl*/*.xz; do
  [ -e "$packed" ] || continue
  target="/tmp/site/$(basename "$packed" .xz | tr '+' '/')"
  if [ ! -f "$target" ]; then
    mkdir -p "$(dirname "$target")" && xz -dc "$packed" >"$target.part" && mv "$target.part" "$target" || exit 1
  fi
done
# --target installs skip .pth files (nvidia-cutlass-dsl puts its `cutlass` package on the path with one):
# let `site` read them and pass on every path they add.
if [ -d /tmp/site ]; then
  site_paths="$(python3 -c "import site, sys; site.addsitedir('/tmp/site'); \
print(':'.join(dict.fromkeys(p for p in sys.path if p.startswith('/tmp/site'))))")"
  export PYTHONPATH="${site_paths:-/tmp/site}${PYTHONPATH:+:$PYTHONPATH}"
fi
