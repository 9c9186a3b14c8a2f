-- one row per run, step bucket, token kind, layer and summarised value of the every-step capture (``gen``): the
-- per-part gen_scores rollups added up (sums over the layer's heads and the bucket's tokens; a run of many parts added
-- up once on this machine), for runs whose rollups were all built from the current definitions; the other runs get the
-- same sums from their gen_metrics and gen_tokens rows by the rollup's own macro.
select * from add_up_gen_scores('rolled_up_gen_scores')
union all
select * from summarise_gen_metrics('stg_gen_metrics_not_rolled_up', 'gen_tokens')
