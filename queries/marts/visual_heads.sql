-- one row per run, query, layer and head: mean score, rank by mean score, and detection score
-- (the share of samples in which the head is among that sample's top-$k heads by the same score;
-- ties are broken by layer, then head, as in the ranking).
-- Two routes to the same numbers. Runs whose parts recorded every sample's first $k places at
-- ingest (head_ranks keeps 64) are read from the per-part rollups head_summary and head_ranks,
-- thousands of rows; the others (parts written before head_ranks, or a larger $k) from every
-- head_metrics row, with a per-sample top-k.
with samples_per_run as (
    select run_id, max(n) as n_samples
    from stg_head_summary
    where query = $query
    group by run_id
),
placed as (
    select run_id, sum(n) as n_placed
    from head_ranks
    where query = $query and score = $score and rank = $k
    group by run_id
),
ranked_runs as (
    select run_id from samples_per_run join placed using (run_id) where n_placed = n_samples
),
unranked_runs as (
    select run_id from runs where run_id not in (select run_id from ranked_runs)
),
-- route 1: rollups
detected as (
    select run_id, layer, head, sum(n) as n_detected
    from head_ranks
    where query = $query and score = $score and rank <= $k and run_id in (select run_id from ranked_runs)
    group by run_id, layer, head
),
summed as (
    select
        run_id,
        query,
        layer,
        head,
        n,
        case $score when 'image_sum' then n else n_concentration end as n_samples,
        case $score
            when 'image_sum' then sum_image
            when 'concentration' then sum_concentration
            when 'concentration_x_sum' then sum_concentration_x_sum
        end as total,
        case $score
            when 'image_sum' then sumsq_image
            when 'concentration' then sumsq_concentration
            when 'concentration_x_sum' then sumsq_concentration_x_sum
        end as total_sq
    from stg_head_summary
    where query = $query and run_id in (select run_id from ranked_runs)
),
from_rollups as (
    select
        s.run_id,
        s.query,
        s.layer,
        s.head,
        s.n_samples,
        case when s.n_samples > 0 then s.total / s.n_samples end as mean_score,
        case when s.n_samples > 1
            then sqrt(greatest(0, (s.total_sq - s.total * s.total / s.n_samples) / (s.n_samples - 1)))
        end as sd_score,
        coalesce(d.n_detected, 0) / s.n as detection_score
    from summed as s
    left join detected as d using (run_id, layer, head)
),
-- route 2: every head_metrics row
scored as (
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
    where query = $query and run_id in (select run_id from unranked_runs)
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
from_rows as (
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
),
per_head as (
    select * from from_rollups
    union all
    select * from from_rows
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
