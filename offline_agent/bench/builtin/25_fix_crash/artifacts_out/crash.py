def total_length(words):
    total = 0
    for i in range(len(words)):
        total += len(words[i])
    return total


print("total:", total_length(["red", "green", "blue"]))
