-- one row per head of one extraction run: its mean score over the run's samples, and its rank (1 = best)
-- $metric picks the score: 'concentration_x_sum' (default), 'image_sum' or 'concentration'
select
    run_id,
    layer,
    head,
    count(score) as n_samples,
    avg(score) as score,
    row_number() over (order by avg(score) desc nulls last, layer, head) as rank
from (
    select
        run_id,
        layer,
        head,
        case $metric
            when 'image_sum' then image_sum
            when 'concentration' then concentration
            when 'concentration_x_sum' then concentration_x_sum
        end as score
    from stg_head_metrics
    where run_id = $run_id and query = $query
)
group by run_id, layer, head
order by rank
