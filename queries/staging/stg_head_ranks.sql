-- one row per run, query, score, place (1..ranks_kept()) and head: in how many samples the head held
-- that place among the sample's heads. From the per-part rollups of runs built with the current
-- definitions, else recomputed from head_metrics by the same macro.
with per_part as (
    select run_id, query, score, rank, layer, head, n
    from rolled_up_head_ranks
    union all
    select run_id, query, score, cast(rank as smallint) as rank, layer, head, n
    from rank_head_metrics('head_metrics_not_rolled_up')
)
-- rank is a plain column here (cast in the recomputing branch above), so that a filter on it reaches the
-- rollup files' scan: their rows sorted by query, score and rank, row groups past the top-k are skipped
select run_id, query, score, rank, layer, head, cast(sum(n) as bigint) as n
from per_part
group by run_id, query, score, rank, layer, head
