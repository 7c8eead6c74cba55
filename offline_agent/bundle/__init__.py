"""An air-gap bundle: a folder with everything an install on a machine with no network needs.

```
DIR/
  install.sh            new venv, pip install --no-index from wheels/, models and KV states
                        placed where offline-agent looks, then `offline-agent doctor --offline`
  manifest.json         what the bundle holds (versions, registry entries), the platform and
                        Python it is for, and the size and sha256 of every file below
  SHA256SUMS            the same sums, for `sha256sum -c` before any Python runs
  wheels/*.whl          this package, every dependency at its installed version, the
                        embedder's package, and llama-cpp-python as the wheel built here
  models/registry.toml  the registry entries of the bundled models
  models/*.gguf
  kv-cache/*.kv         saved KV states of the bundled models, re-keyed when placed
```

`build` writes one (`offline-agent bundle DIR`), `place` puts its models and KV states into
an install's home (`offline-agent models fetch --from DIR`, run by install.sh), and
`manifest` reads it back for `offline-agent doctor --bundle DIR`.
"""
