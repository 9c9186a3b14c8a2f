-- one row per run, query, layer and head: mean score, rank by mean score, and detection score
-- (of the samples in which the head has the score, the share in which it is among that sample's top-$k
-- heads by it; the order of a sample's heads is head_order_key's: heads with a value, ties to the lower
-- layer, then head; null for a score that does not order heads, score_orders_heads). For $k up to ranks_kept() the places come from stg_head_ranks (per-part rollups);
-- for a larger $k from every head_metrics row, with a per-sample top-k. Beside each head, causally: its score
-- in the newest attribution run (attnwh attribute) of the same model, revision and benchmark, of the method
-- $attribution_method ('any': whichever is newest; stg_attribution_pairs), null where there is none.
with means as (
    select
        run_id,
        query,
        layer,
        head,
        n as n_samples,
        case when n > 0 then total / n end as mean_score,
        case when n > 1 then sqrt(greatest(0, (total_sq - total * total / n) / (n - 1))) end as sd_score
    from stg_head_scores
    where query = $query and score = $score
),
-- the places of the first ranks_kept() heads of every sample
detected_from_ranks as (
    select run_id, layer, head, sum(n) as n_detected
    from stg_head_ranks
    where query = $query and score = $score and rank <= $k and $k <= ranks_kept()
    group by run_id, layer, head
),
-- a larger k: every head_metrics row
keyed as (
    select
        run_id,
        sample_idx,
        layer,
        head,
        head_order_key(head_score($score, m), layer, head) as sort_key
    from stg_head_metrics as m
    where query = $query and $k > ranks_kept() and head_score($score, m) is not null
),
thresholds as (
    -- each sample's k-th best key (the top-k heap of an aggregate, no sort of every sample's heads)
    select run_id, sample_idx, list_last(max(sort_key, $k)) as kth
    from keyed
    group by run_id, sample_idx
),
detected_from_rows as (
    select k.run_id, k.layer, k.head, count(*) filter (where k.sort_key >= t.kth) as n_detected
    from keyed as k
    join thresholds as t using (run_id, sample_idx)
    group by k.run_id, k.layer, k.head
),
detected as (
    select * from detected_from_ranks
    union all
    select * from detected_from_rows
),
attributed as (
    select extraction_run as run_id, arg_max(attribution_run, (attribution_created, attribution_run)) as attribution_run
    from stg_attribution_pairs
    where extraction_run is not null and ($attribution_method = 'any' or method = $attribution_method)
    group by extraction_run
)
select
    m.run_id,
    r.model,
    r.benchmark,
    m.query,
    m.layer,
    m.head,
    m.n_samples,
    m.mean_score,
    m.sd_score,
    case when score_orders_heads($score) and m.n_samples > 0 then coalesce(d.n_detected, 0) / m.n_samples end as detection_score,
    row_number() over (partition by m.run_id, m.query order by m.mean_score desc nulls last, m.layer, m.head) as rank,
    a.run_id as attribution_run,
    a.method as attribution_method,
    a.ablation as attribution_ablation,
    a.score as attribution,
    a.ci_low as attribution_ci_low,
    a.ci_high as attribution_ci_high,
    a.rank as attribution_rank
from means as m
left join detected as d using (run_id, layer, head)
join stg_runs as r using (run_id)
left join attributed as p using (run_id)
left join stg_head_attributions as a on a.run_id = p.attribution_run and a.layer = m.layer and a.head = m.head
order by m.run_id, m.query, rank
