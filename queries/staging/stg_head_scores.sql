-- one row per run, query, layer, head and head score (head_score_names()): the samples that have the
-- score, and the sum and sum of squares of its values over them. The one place that says which
-- columns of the summary hold each score's sums. The summary is computed once (materialised), not
-- once per score.
with summary as materialized (
    select * from stg_head_summary
)
select run_id, query, layer, head, 'image_sum' as score, n as n_samples, sum_image as total, sumsq_image as total_sq
from summary
union all
select run_id, query, layer, head, 'concentration', n_concentration, sum_concentration, sumsq_concentration
from summary
union all
select run_id, query, layer, head, 'concentration_x_sum', n_concentration, sum_concentration_x_sum, sumsq_concentration_x_sum
from summary
union all
select run_id, query, layer, head, 'region_hit', coalesce(n_region_hit, 0), sum_region_hit, sumsq_region_hit
from summary
