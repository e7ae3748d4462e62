"""Small, complete pipelines of OPs that are not DALL·E: what docs/pipelines.md walks through.

They live in the installed package (`tessera.ops.examples`), not beside their YAML in
deploy/examples/, because a graph names each OP as `package.module:ClassName` and deploy/
holds configuration only: `tessera serve --config deploy/examples/gradient.yaml` then works
from any checkout or install, and a test serves the same file.
"""
