"""Texts the bf16-vs-fp32 checks share (tests/handlers/test_dtype.py, tests/test_dtype_stack.py)."""

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Quarterly revenue grew by twelve percent, driven by strong demand in Europe and Asia.",
    "hello",
    "Machine learning models turn text into vectors that capture meaning.",
    "The weather today is cloudy with a chance of rain in the afternoon.",
    "Please remember to close the window before you leave the house, it may storm tonight.",
    "Embeddings",
]

QUERY = "How do plants make food from sunlight?"
DOCUMENTS = [
    "Photosynthesis lets plants turn light, water and carbon dioxide into sugar.",
    "The stock market fell sharply on Monday after weak earnings reports.",
    "Chlorophyll in leaves absorbs sunlight to power the making of glucose.",
    "My favourite football team lost the match last night.",
    "Plants need sunlight, water and nutrients from the soil to grow.",
    "A recipe for chocolate cake with three eggs and a cup of sugar.",
    "Solar panels convert sunlight into electricity for homes.",
    "Roots take up water that leaves use together with light to make food.",
]
