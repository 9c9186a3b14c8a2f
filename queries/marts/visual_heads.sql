-- one row per run, query, layer and head: mean score, rank by mean score, and detection score
-- (the share of samples in which the head is among that sample's top-$k heads by the same score;
-- ties are broken by layer, then head, as in the ranking)
with scored as (
    select
        run_id,
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
keyed as (
    -- a total order: higher score first, then lower layer, then lower head
    select *, {'score': coalesce(score, -1e300), 'layer': -layer, 'head': -head} as sort_key
    from scored
),
thresholds as (
    -- each sample's k-th best key (the top-k heap of an aggregate, no sort of every sample's heads)
    select run_id, sample_idx, list_last(max(sort_key, $k)) as kth
    from keyed
    group by run_id, sample_idx
),
per_head as (
    select
        k.run_id,
        k.query,
        k.layer,
        k.head,
        count(k.score) as n_samples,
        avg(k.score) as mean_score,
        stddev_samp(k.score) as sd_score,
        avg(case when k.sort_key >= t.kth then 1.0 else 0.0 end) as detection_score
    from keyed as k
    join thresholds as t using (run_id, sample_idx)
    group by k.run_id, k.query, k.layer, k.head
)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.query,
    p.layer,
    p.head,
    p.n_samples,
    p.mean_score,
    p.sd_score,
    p.detection_score,
    row_number() over (partition by p.run_id, p.query order by p.mean_score desc nulls last, p.layer, p.head) as rank
from per_head as p
join runs as r using (run_id)
