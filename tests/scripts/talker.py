from pubsub import pub


def main(text="hello"):
    pub.sendMessage("test.relay", msg_src="talker", text=text)
