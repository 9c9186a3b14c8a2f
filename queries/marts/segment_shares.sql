-- one row per run, query and layer: where the attention goes, as mean shares of each token segment
-- (from the per-part rollups, added up per layer in stg_layer_summary)
select
    run_id, model, benchmark, query, layer, depth, n,
    sum_image / n as image,
    sum_bos / n as bos,
    sum_system / n as system,
    sum_prompt / n as prompt,
    sum_generated / n as generated
from stg_layer_summary
order by run_id, query, layer
