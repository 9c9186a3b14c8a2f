-- one row per run, query and layer: where the attention goes, as mean shares of each token segment
-- (from the per-part rollups in head_summary)
with per_layer as (
    select
        run_id,
        query,
        layer,
        cast(sum(n) as bigint) as n,
        sum(sum_image) / sum(n) as image,
        sum(sum_bos) / sum(n) as bos,
        sum(sum_system) / sum(n) as system,
        sum(sum_prompt) / sum(n) as prompt,
        sum(sum_generated) / sum(n) as generated
    from stg_head_summary
    group by run_id, query, layer
)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.query,
    p.layer,
    l.depth,
    p.n,
    p.image,
    p.bos,
    p.system,
    p.prompt,
    p.generated
from per_layer as p
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
