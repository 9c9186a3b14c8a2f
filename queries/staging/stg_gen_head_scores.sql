-- one row per run, step bucket, object-word kind (grounded, hallucinated), layer, head and summarised value at the first
-- token of object words, a sample as the unit: the per-part gen_head_scores rollups added up (a run of many parts added
-- up once on this machine), or recomputed from the rows as stg_gen_scores does.
select * from add_up_gen_head_scores('rolled_up_gen_head_scores')
union all
select * from summarise_gen_heads('stg_gen_metrics_not_rolled_up', 'gen_tokens')
