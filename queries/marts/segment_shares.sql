-- one row per run, query and layer: where the attention goes, as mean shares of each token segment
-- (from the per-part rollups, added up per layer in stg_layer_summary)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.query,
    p.layer,
    l.depth,
    p.n,
    p.sum_image / p.n as image,
    p.sum_bos / p.n as bos,
    p.sum_system / p.n as system,
    p.sum_prompt / p.n as prompt,
    p.sum_generated / p.n as generated
from stg_layer_summary as p
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
