select
    trait_ordinal,
    trait,
    level,
    split,
    count(*) as n_posts
from {{ ref('stg_psychgenerator_posts') }}
group by trait_ordinal, trait, level, split
order by trait_ordinal, level nulls last, split nulls last
