-- one row per run, step bucket and layer of the every-step capture (``--queries gen``): a summarised value
-- ($score, image attention by default) averaged over the layer's heads and the generated tokens in the bucket,
-- with its standard deviation, the layer's stage and depth: does attention to the image fade as the answer grows?
with added as (
    select
        run_id,
        step_bucket,
        layer,
        cast(sum(n) filter (where score = $score) as bigint) as n_values,
        -- every head of every token has an image_sum (0 where the head sees no image key): the tokens' count when
        -- $score is null for some (concentration where a sliding window left the image out)
        cast(sum(n) filter (where score = 'image_sum') as bigint) as n_image_sums,
        sum(total) filter (where score = $score) as total,
        sum(total_sq) filter (where score = $score) as total_sq
    from stg_gen_scores
    where score in ($score, 'image_sum')
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
    a.n_image_sums // r.n_heads as n_tokens,
    a.total / a.n_values as mean_value,
    case when a.n_values > 1 then sqrt(greatest(a.total_sq - a.total * a.total / a.n_values, 0) / (a.n_values - 1)) end as sd_value
from added as a
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
where a.n_values > 0
order by a.run_id, a.step_bucket, a.layer
