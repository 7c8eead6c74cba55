def total_length(words):
    total = 0
    for i in range(len(words) + 1):
        total += len(words[i])
    return total


print("total:", total_length(["red", "green", "blue"]))
