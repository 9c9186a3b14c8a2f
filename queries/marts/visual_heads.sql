-- one row per run, query, layer and head: mean score, rank by mean score, and detection score
-- (the share of samples in which the head is among that sample's top-$k heads by the same score)
with scored as (
    select
        run_id,
        model,
        benchmark,
        query,
        sample_idx,
        layer,
        head,
        case $score
            when 'image_sum' then image_sum
            when 'concentration' then concentration
            when 'concentration_x_sum' then concentration_x_sum
        end as score
    from stg_head_metrics
    where query = $query
),
ranked as (
    select
        *,
        row_number() over (partition by run_id, sample_idx order by score desc nulls last, layer, head) as sample_rank
    from scored
),
per_head as (
    select
        run_id,
        model,
        benchmark,
        query,
        layer,
        head,
        count(score) as n_samples,
        avg(score) as mean_score,
        stddev_samp(score) as sd_score,
        avg(case when sample_rank <= $k then 1.0 else 0.0 end) as detection_score
    from ranked
    group by run_id, model, benchmark, query, layer, head
)
select
    *,
    row_number() over (partition by run_id, query order by mean_score desc nulls last, layer, head) as rank
from per_head
