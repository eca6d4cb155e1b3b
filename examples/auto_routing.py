"""Auto routing: the classifier picks the task, the policy picks the route, router picks the cheapest that serves."""

import router
from router.dev.demo import simulated_providers

with simulated_providers():  # fake vLLM/DeepSeek/OpenAI/Mistral on loopback; leave this out in production
    for prompt in ["Write a Rust function that parses ISO dates",
                   "If 3 cats catch 3 mice in 3 minutes, how long do 100 cats need for 100 mice?",
                   "Suggest a name for a bakery that also sells coffee"]:
        resp = router.complete(messages=[{"role": "user", "content": prompt}])
        info = resp.router
        print(f"{info.task:9} -> {info.route:9} {info.provider}/{info.model}  ${info.cost_usd:.7f}")
        print("   ", resp.choices[0].message.content[:60])
