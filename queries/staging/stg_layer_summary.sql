-- one row per run, query and layer: the head summary added up over the layer's heads, with the run's model
-- and benchmark and the layer's depth and stage (what every per-layer mart shows beside its numbers)
with layers as (
    select
        run_id,
        query,
        layer,
        cast(sum(n) as bigint) as n,
        cast(sum(n_concentration) as bigint) as n_concentration,
        cast(sum(n_concentration_x_sum) as bigint) as n_concentration_x_sum,
        sum(sum_image) as sum_image,
        sum(sumsq_image) as sumsq_image,
        max(max_image) as max_image,
        sum(sum_concentration) as sum_concentration,
        sum(sum_concentration_x_sum) as sum_concentration_x_sum,
        sum(sum_bos) as sum_bos,
        sum(sum_system) as sum_system,
        sum(sum_prompt) as sum_prompt,
        sum(sum_generated) as sum_generated
    from stg_head_summary
    group by run_id, query, layer
)
select p.run_id, r.model, r.benchmark, p.query, p.layer, l.n_layers, l.depth, l.stage, p.* exclude (run_id, query, layer)
from layers as p
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
