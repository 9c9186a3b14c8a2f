-- one row per head of one extraction run: its mean score over the run's samples, and its rank (1 = best)
-- $score picks the head score (one of head_score_names(); 'concentration_x_sum' by default)
with scored as (
    select run_id, layer, head, n as n_samples, case when n > 0 then total / n end as mean_score
    from stg_head_scores
    where run_id = $run_id and query = $query and score = $score
)
select
    run_id,
    layer,
    head,
    n_samples,
    mean_score as score,
    row_number() over (order by mean_score desc nulls last, layer, head) as rank
from scored
order by rank
