import zipfile

from pipelines.data import movielens


def test_reads_the_wheel_and_orders_events(tmp_path, monkeypatch):
    # A tiny fake recbole wheel with the same member layout: exercises extraction and parsing offline.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / f"recbole-{movielens.RECBOLE_VERSION}-py3-none-any.whl", "w") as zf:
        zf.writestr(movielens._MEMBER_DIR + "ml-100k.inter",
                    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n2\t10\t5\t881250950\n1\t20\t3\t881250949\n")
        zf.writestr(movielens._MEMBER_DIR + "ml-100k.item",
                    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tA\t1995\tComedy\n20\tB\t1996\tDrama\n")
        zf.writestr(movielens._MEMBER_DIR + "ml-100k.user",
                    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\tx\t1\n2\t30\tF\ty\t2\n")
    data = movielens.load_ml100k(tmp_path)
    assert list(data.interactions["user_id"]) == ["1", "2"]  # time-ordered
    events = list(movielens.ml100k_events(tmp_path))
    assert [e.ts for e in events] == [881250949000, 881250950000]
    assert events[0].event_id == "ml100k-1-20-881250949000" and events[0].value == 3.0
    assert list(data.items["genres"]) == ["Comedy", "Drama"]
