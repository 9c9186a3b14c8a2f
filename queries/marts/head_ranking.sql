-- one row per head of one extraction run: its mean score over the run's samples, and its rank (1 = best)
-- $metric picks the score: 'concentration_x_sum' (default), 'image_sum' or 'concentration'
-- (from the per-part rollups in head_summary)
with scored as (
    select
        run_id,
        layer,
        head,
        n,
        case $metric
            when 'image_sum' then sum_image / n
            when 'concentration' then sum_concentration / nullif(n_concentration, 0)
            when 'concentration_x_sum' then sum_concentration_x_sum / nullif(n_concentration, 0)
        end as score,
        case $metric when 'image_sum' then n else n_concentration end as n_samples
    from stg_head_summary
    where run_id = $run_id and query = $query
)
select
    run_id,
    layer,
    head,
    n_samples,
    score,
    row_number() over (order by score desc nulls last, layer, head) as rank
from scored
order by rank
