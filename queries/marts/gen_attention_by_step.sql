-- one row per run, step bucket and layer of the every-step capture (``--queries gen``): a summarised value
-- ($score, image attention by default) averaged over the layer's heads and the generated tokens in the bucket,
-- with its standard deviation, the layer's stage and depth: does attention to the image fade as the answer grows?
with added as (
    select
        run_id,
        step_bucket,
        layer,
        cast(sum(n) as bigint) as n_values,
        sum(total) as total,
        sum(total_sq) as total_sq
    from stg_gen_scores
    where score = $score
    group by run_id, step_bucket, layer
)
select
    a.run_id,
    r.model,
    r.benchmark,
    a.step_bucket,
    a.layer,
    l.n_layers,
    l.stage,
    l.depth,
    a.n_values,
    a.n_values // r.n_heads as n_tokens,
    a.total / a.n_values as mean_value,
    case when a.n_values > 1 then sqrt(greatest(a.total_sq - a.total * a.total / a.n_values, 0) / (a.n_values - 1)) end as sd_value
from added as a
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
where a.n_values > 0
