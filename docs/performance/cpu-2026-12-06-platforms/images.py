"""Same seeds, same bytes: PNG digests of the offline pipeline's images, in whichever tree runs it."""
import hashlib, json, sys
from tessera.ops.messages import GenerateParams
from tessera.ops.pipeline import LocalPipeline
try:
    from tessera.server.config import served_graph
    pipe = LocalPipeline(served_graph(), capacity=16)
except ImportError:
    pipe = LocalPipeline(None, capacity=16)
prompts = ["a red circle", "a big blue square on the left", "two green triangles", "a small yellow star",
           "a purple circle above a red square", "un cercle rouge"]
reqs = [GenerateParams(p, num_images=4, num_candidates=4, seed=100 + i,
                       guidance_scale=(3.0 if i % 2 else None), temperature=(0.8 if i % 3 == 0 else None))
        for i, p in enumerate(prompts)]
out = {}
for r, res in zip(reqs, pipe.generate(reqs)):
    out[r.prompt] = [(im.seed, im.candidate_index, round(im.clip_score, 5), hashlib.sha256(im.png).hexdigest()[:16])
                     for im in res.images]
json.dump(out, sys.stdout, indent=1)
