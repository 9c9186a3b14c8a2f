-- one row per run, sample, query, layer and head, with derived columns:
-- concentration = 1 - image_entropy / ln(n_image): 1 = all image attention on one token, 0 = uniform
-- depth = layer / (n_layers - 1), for comparing models of different depth
-- stage: early / mid / late (32 layers: 0-9, 10-19, 20-31; 40 layers: 0-12, 13-26, 27-39; otherwise thirds)
with runs_shape as (
    select
        run_id,
        n_layers,
        case n_layers when 32 then 10 when 40 then 13 else cast(round(n_layers / 3) as integer) end as mid_start,
        case n_layers when 32 then 20 when 40 then 27 else cast(round(2 * n_layers / 3) as integer) end as late_start
    from runs
)
select
    h.run_id,
    s.model,
    s.benchmark,
    h.sample_idx,
    h.query,
    h.layer,
    h.head,
    r.n_layers,
    case when r.n_layers > 1 then h.layer / (r.n_layers - 1) else 0 end as depth,
    case when h.layer < r.mid_start then 'early' when h.layer < r.late_start then 'mid' else 'late' end as stage,
    h.image_sum,
    h.image_entropy,
    h.image_max,
    h.image_argmax,
    h.bos_sum,
    h.system_sum,
    h.prompt_sum,
    h.generated_sum,
    h.region_sum,
    h.region_entropy,
    s.n_image,
    s.correct,
    case when s.n_image > 1 then 1 - h.image_entropy / ln(s.n_image) end as concentration,
    case when s.n_image > 1 then (1 - h.image_entropy / ln(s.n_image)) * h.image_sum end as concentration_x_sum
from head_metrics as h
join stg_samples as s using (run_id, sample_idx)
join runs_shape as r using (run_id)
