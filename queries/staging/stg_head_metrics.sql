-- one row per run, sample, query, layer and head, with the derived concentration
-- concentration = 1 - image_entropy / ln(n_image): 1 = all image attention on one token, 0 = uniform
select
    h.run_id,
    s.model,
    s.benchmark,
    h.sample_idx,
    h.query,
    h.layer,
    h.head,
    h.image_sum,
    h.image_entropy,
    h.image_max,
    h.image_argmax,
    h.bos_sum,
    h.system_sum,
    h.prompt_sum,
    h.generated_sum,
    s.n_image,
    case when s.n_image > 1 then 1 - h.image_entropy / ln(s.n_image) end as concentration,
    case when s.n_image > 1 then (1 - h.image_entropy / ln(s.n_image)) * h.image_sum end as concentration_x_sum
from head_metrics as h
join stg_samples as s using (run_id, sample_idx)
