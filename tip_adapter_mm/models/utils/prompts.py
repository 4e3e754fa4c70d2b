"""Prompt templates per dataset (Tip-Adapter's reference configs), in one
place: docs/datasets.md lists them."""
from typing import Dict, Sequence, Tuple, Union

PROMPT_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    'imagenet': (
        'itap of a {}.',
        'a bad photo of the {}.',
        'a origami {}.',
        'a photo of the large {}.',
        'a {} in a video game.',
        'art of the {}.',
        'a photo of the small {}.',
    ),
    'caltech101': ('a photo of a {}.', ),
    'dtd': ('{} texture.', ),
    'eurosat': ('a centered satellite photo of {}.', ),
    'fgvc_aircraft': ('a photo of a {}, a type of aircraft.', ),
    'food101': ('a photo of {}, a type of food.', ),
    'flowers102': ('a photo of a {}, a type of flower.', ),
    'oxford_pets': ('a photo of a {}, a type of pet.', ),
    'stanford_cars': ('a photo of a {}.', ),
    'sun397': ('a photo of a {}.', ),
    'ucf101': ('a photo of a person doing {}.', ),
    'default': ('a photo of a {}.', ),
}


def get_templates(templates: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """Resolve a dataset name from :data:`PROMPT_TEMPLATES`, or check a list.

    Every template must contain exactly one ``{}`` for the class name.
    """
    if isinstance(templates, str):
        if templates not in PROMPT_TEMPLATES:
            raise KeyError(
                f'Unknown prompt-template set {templates!r}; known: '
                f'{sorted(PROMPT_TEMPLATES)}, or give a list of strings '
                "with one '{}' each.")
        return PROMPT_TEMPLATES[templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError('The list of prompt templates is empty.')
    for template in templates:
        if not isinstance(template, str) or template.count('{}') != 1:
            raise ValueError(
                f'Prompt template {template!r} must be a string with '
                "exactly one '{}' for the class name.")
    return templates
